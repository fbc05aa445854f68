//! The control plane: state model, the pure consent state machine, destinations and policy.
pub mod consent;
pub mod destination;
pub mod model;
pub mod supervisor;
