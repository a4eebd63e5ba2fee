//! Suites that cross crates live in tests/.
