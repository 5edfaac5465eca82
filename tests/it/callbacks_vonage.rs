//! vonage callbacks end to end (both backends).
