//! The ingest service: SMTP listener, IMAP connector and raw-MIME endpoint, each turning an
//! accepted mail into a `MessageReceived` event. Not built yet (its own issue); the crate exists
//! so the workspace has the layout of DESIGN.md and the binary's wiring has its place.
