//! The integration suite: the real server over HTTP, once per backend.

mod helpers;
mod messages;
mod operations;
mod shutdown;
mod store;
