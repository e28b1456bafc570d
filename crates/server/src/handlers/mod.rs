//! One file per resource; each handler's doc comment is its API documentation.

pub mod execute;
pub mod export;
pub mod files;
pub mod sessions;
pub mod system;

use std::time::Duration;

use crate::error::ApiError;

/// Validate a client-given time limit against the server's maximum.
pub fn timeout_from(
    given: Option<f64>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    match given {
        None => Ok(default.min(max)),
        Some(t) if t.is_finite() && t > 0.0 && t <= max.as_secs_f64() => {
            Ok(Duration::from_secs_f64(t))
        }
        Some(_) => Err(ApiError::bad_request(format!(
            "timeout_s must be a number of seconds in (0, {}]",
            max.as_secs_f64()
        ))),
    }
}
