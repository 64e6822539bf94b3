//! Signatures: GitHub's webhook signature, checked on the way in, and the outbound webhooks'
//! signatures, made on the way out. Each is held against this target's own HMAC-SHA256.
//!
//! Invariants (from `shared/src/github/mod.rs`, `crypto.rs` and `delivery.rs`):
//! - checking returns, never panics, whatever the header;
//! - `X-Hub-Signature-256` is accepted exactly when it is `sha256=` and the hex (in either
//!   case) of the body's HMAC-SHA256 under the secret, with surrounding whitespace ignored: so
//!   the real signature passes, and a change to any byte of the body, or of the header beyond
//!   that, fails;
//! - the outbound headers are Pulumi's hex HMAC of the body, and Tarmac's
//!   `t=<t>,v1=<hex HMAC of "<t>.<body>">`, which a receiver verifies by that rule, and which
//!   fails for another body or another time.
#![no_main]

use arbitrary::Arbitrary;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use tarmac::github::signature_valid;

#[derive(Arbitrary, Debug)]
struct Input {
    secret: String,
    body: Vec<u8>,
    /// A header as a client might send it.
    header: String,
    /// Where to change the body and the real header, and to what.
    at: usize,
    byte: u8,
    /// Padding around the real header, and whether its hex is in capitals.
    pad: (bool, bool),
    upper: bool,
    t: i64,
}

fn hmac(key: &str, message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Strict hex: pairs of `[0-9a-fA-F]`, nothing else.
fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// GitHub's rule, as documented.
fn github_valid(secret: &str, body: &[u8], header: &str) -> bool {
    header
        .trim()
        .strip_prefix("sha256=")
        .and_then(unhex)
        .is_some_and(|tag| tag == hmac(secret, body))
}

/// A receiver's check of `Tarmac-Webhook-Signature`.
fn tarmac_valid(secret: &str, body: &str, header: &str) -> Option<i64> {
    let (t, v1) = header.strip_prefix("t=")?.split_once(",v1=")?;
    if unhex(v1)? != hmac(secret, format!("{t}.{body}").as_bytes()) {
        return None;
    }
    t.parse().ok()
}

fuzz_target!(|input: Input| {
    let Input {
        secret, body, at, ..
    } = &input;

    assert_eq!(
        signature_valid(secret, body, Some(&input.header)),
        github_valid(secret, body, &input.header),
        "header {:?}",
        input.header
    );
    assert!(!signature_valid(secret, body, None));

    let mut real = format!("sha256={}", hex(&hmac(secret, body)));
    if input.upper {
        real = format!("sha256={}", real["sha256=".len()..].to_ascii_uppercase());
    }
    if input.pad.0 {
        real.insert(0, ' ');
    }
    if input.pad.1 {
        real.push('\t');
    }
    assert!(signature_valid(secret, body, Some(&real)), "{real}");
    if !body.is_empty() {
        let mut changed = body.clone();
        let i = at % body.len();
        changed[i] = changed[i].wrapping_add(input.byte.max(1));
        assert!(!signature_valid(secret, &changed, Some(&real)));
    }
    // Another character at any place of the header: one that hex parsing or trimming might
    // take for what was there, or any other.
    let mut header = real.clone().into_bytes();
    let i = at % header.len();
    let tricky = b"+- \t0aAfFgG=";
    header[i] = match input.byte {
        b @ 0..=127 => tricky[usize::from(b) % tricky.len()],
        b => b % 128,
    };
    if header[i] != real.as_bytes()[i] {
        let header = String::from_utf8(header).expect("ASCII");
        assert_eq!(
            signature_valid(secret, body, Some(&header)),
            github_valid(secret, body, &header),
            "{header:?}"
        );
    }

    let body = String::from_utf8_lossy(body);
    let [(pulumi_name, pulumi), (tarmac_name, tarmac)] =
        tarmac::fuzzing::webhook_signatures(secret, &body, input.t);
    assert_eq!(pulumi_name, "Pulumi-Webhook-Signature");
    assert_eq!(tarmac_name, "Tarmac-Webhook-Signature");
    assert_eq!(pulumi, hex(&hmac(secret, body.as_bytes())));
    assert_eq!(
        tarmac_valid(secret, &body, &tarmac),
        Some(input.t),
        "{tarmac}"
    );
    let other = format!("{body} ");
    assert_eq!(tarmac_valid(secret, &other, &tarmac), None);
    let [_, (_, later)] =
        tarmac::fuzzing::webhook_signatures(secret, &body, input.t.wrapping_add(1));
    let replayed = tarmac.replace(
        &format!("t={},", input.t),
        &format!("t={},", input.t.wrapping_add(1)),
    );
    assert_ne!(replayed, later, "a signature must bind its time");
    assert_eq!(tarmac_valid(secret, &body, &replayed), None);
});
