//! mailjet callbacks end to end (both backends).
