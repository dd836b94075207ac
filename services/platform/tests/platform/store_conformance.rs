//! The event store conformance suite, run against both backends.
