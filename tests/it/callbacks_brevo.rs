//! brevo callbacks end to end (both backends).
