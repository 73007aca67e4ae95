//! The decider contract every entity implements (design §4).
//!
//! `decide` and `evolve` are pure: no I/O, no clock (time is an argument), no randomness, no
//! ids minted inside (the shell allocates them and puts them in the command). That is what
//! lets a stream be replayed any number of times with the same result, and what the simulator
//! and the given/when/then tests rely on.

use snapvault_events::Error;
use snapvault_events::codec::DomainEvent;

pub trait Aggregate: Send + Sync + 'static {
    /// The entity's state, rebuilt by folding its events from `Default`.
    type State: Default + Clone + Send + Sync + std::fmt::Debug + 'static;
    type Command: Clone + Send + Sync + std::fmt::Debug + 'static;
    type Event: DomainEvent;

    /// Short name of the entity kind, used in stream names, logs and errors.
    const KIND: &'static str;

    /// Decide what happens when `command` meets `state` at time `now_ms`. An empty vector
    /// means "nothing to do" (an idempotent repeat).
    fn decide(
        state: &Self::State,
        command: &Self::Command,
        now_ms: u64,
    ) -> Result<Vec<Self::Event>, Error>;

    /// Apply one event. Must accept every event `decide` can produce, and events written by
    /// earlier builds; it never fails (a stream is history, not a request).
    fn evolve(state: &mut Self::State, event: &Self::Event);

    /// Fold a sequence of events from the default state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State {
        let mut state = Self::State::default();
        for e in events {
            Self::evolve(&mut state, e);
        }
        state
    }
}

/// Given/when/then for decider tests (cqrs-es style): replay `given`, decide `when`, and
/// return the outcome with the state after applying it.
#[cfg(test)]
pub fn given_when<A: Aggregate>(
    given: &[A::Event],
    when: A::Command,
    now_ms: u64,
) -> (Result<Vec<A::Event>, Error>, A::State) {
    let mut state = A::replay(given);
    let out = A::decide(&state, &when, now_ms);
    if let Ok(events) = &out {
        for e in events {
            A::evolve(&mut state, e);
        }
    }
    (out, state)
}
