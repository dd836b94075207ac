//! The shape every aggregate takes.

/// An event-sourced aggregate. `decide` is the only place business rules live; `evolve` folds
/// an event into state and can't fail (an event is a fact that already happened).
pub trait Aggregate: Default + Sized {
    type Command;
    type Event;
    type Error: std::error::Error;

    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
    fn evolve(self, event: &Self::Event) -> Self;

    /// Rebuild state from history.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::default(), Self::evolve)
    }
}
