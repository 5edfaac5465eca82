//! resend callbacks end to end (both backends).
