//! The attack suite: hostile programs run in real sessions of a real server,
//! each with the outcome it must meet.
