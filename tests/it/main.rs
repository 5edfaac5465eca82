//! The integration suite: the real server over HTTP, once per backend.

mod api_keys;
mod callbacks;
mod callbacks_brevo;
mod callbacks_mailjet;
mod callbacks_postmark;
mod callbacks_resend;
mod callbacks_sendgrid;
mod callbacks_ses;
mod callbacks_sparkpost;
mod callbacks_twilio;
mod callbacks_vonage;
mod cli;
mod consumer;
mod delivery;
mod helpers;
mod messages;
mod operations;
mod plans;
mod shutdown;
mod sink;
mod store;
mod tracking;
