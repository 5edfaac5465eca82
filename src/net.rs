//! Outbound networking: the TLS set-up shared by every HTTP client hookrelay
//! makes (SNS certificates and confirmations, subscriber deliveries).

use std::sync::Once;

/// Installs ring as rustls's process-wide crypto provider. Call before
/// building any HTTPS client; later calls do nothing.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only if another provider was installed first, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
