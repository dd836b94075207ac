//! The conversation service: conversations, messages, notes, drafts, templates, tags,
//! participants and the live stream. Not built yet (its own issue).
