//! sendgrid callbacks end to end (both backends).
