//! `postvak bench ingest` (filled in below).
