//! postmark callbacks end to end (both backends).
