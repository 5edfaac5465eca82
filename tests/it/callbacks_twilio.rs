//! twilio callbacks end to end (both backends).
