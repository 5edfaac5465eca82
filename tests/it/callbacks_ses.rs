//! ses callbacks end to end (both backends).
