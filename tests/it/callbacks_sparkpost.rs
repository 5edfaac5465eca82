//! sparkpost callbacks end to end (both backends).
