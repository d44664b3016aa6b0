//! What every splitvisor vhost-user backend process shares: logging now; socket activation,
//! readiness notification and the serve loop arrive with the first backend.

pub mod logging;
