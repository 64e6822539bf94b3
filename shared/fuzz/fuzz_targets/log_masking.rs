//! Masking a run's log: a child's output, read as the runner reads it, masked as the run log
//! masks it.
//!
//! Invariants (from `shared/src/runner/logs.rs` and `exec.rs`):
//! - however the pipe delivers the output, it is read into the same pieces: each line, a
//!   longer line in pieces of at most the limit, nothing lost or repeated;
//! - no secret is ever in the log: not in a piece, nor across the pieces a long line is cut
//!   into (a reader sees them one after the other). A secret is a value given to the masker,
//!   trimmed, and each line of a multi-line one; one of a single character is not masked (the
//!   documented exception). Secrets with a character of `[secret]` are masked too, but left out
//!   of this check: masking writes those characters, so their text can appear where none was;
//! - secrets learnt during a run (`mask_also`) mask as if they had been known from the start.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tarmac::fuzzing;

/// Few characters, so secrets and output share them and overlap often; with some of the mask's
/// own, a carriage return, a two-byte character and the one invalid UTF-8 becomes.
const ALPHABET: &[char] = &[
    'a', 'b', 'a', 'b', 'd', '1', ' ', '\n', '\r', '[', ']', 's', 'e', 't', 'é', '\u{fffd}',
];
const MASK: &str = "[secret]";

#[derive(Arbitrary, Debug)]
struct Text(Vec<u8>);

impl Text {
    fn string(&self) -> String {
        self.0
            .iter()
            .take(24)
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()])
            .collect()
    }
}

#[derive(Arbitrary, Debug)]
enum Token {
    Secret(u8),
    /// The first bytes of a secret.
    Prefix(u8, u8),
    Text(Text),
    Newline,
    Mask,
    Byte(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    secrets: Vec<Text>,
    later: Vec<Text>,
    output: Vec<Token>,
    reads: Vec<u8>,
    max_line: u8,
}

/// What must never be shown, per the masker's contract.
fn needles(secrets: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for s in secrets {
        for part in std::iter::once(s.as_str()).chain(s.lines()) {
            let part = part.trim();
            // A multi-line secret is masked line by line, as output is read by line.
            let checkable = !part.contains(|c| c == '\n' || MASK.contains(c));
            if part.chars().count() > 1 && checkable {
                out.push(part.to_string());
            }
        }
    }
    out
}

/// Whether `bytes` are the start of a UTF-8 character and not all of it: a lead byte of a
/// longer character, then continuation bytes (the output may hold such a start that never ends).
fn starts_partial_char(bytes: &[u8]) -> bool {
    let len = match bytes.first() {
        Some(0xC0..=0xDF) => 2,
        Some(0xE0..=0xEF) => 3,
        Some(0xF0..=0xF7) => 4,
        _ => return false,
    };
    bytes.len() < len && bytes[1..].iter().all(|b| b & 0xC0 == 0x80)
}

fuzz_target!(|input: Input| {
    let secrets: Vec<String> = input.secrets.iter().map(Text::string).collect();
    let later: Vec<String> = input.later.iter().map(Text::string).collect();
    let mut output = Vec::new();
    for t in &input.output {
        let secret = |i: &u8| secrets.get(usize::from(*i) % secrets.len().max(1));
        match t {
            Token::Secret(i) => output.extend(secret(i).map(|s| s.as_bytes()).unwrap_or(b"")),
            Token::Prefix(i, n) => {
                let s = secret(i).map(|s| s.as_bytes()).unwrap_or(b"");
                output.extend(&s[..usize::from(*n) % (s.len() + 1)]);
            }
            Token::Text(t) => output.extend(t.string().as_bytes()),
            Token::Newline => output.push(b'\n'),
            Token::Mask => output.extend(MASK.as_bytes()),
            Token::Byte(b) => output.push(*b),
        }
    }
    let reads: Vec<usize> = input.reads.iter().map(|r| usize::from(*r)).collect();
    let max_line = u64::from(input.max_line % 64) + 1;

    let pieces = fuzzing::log_output(&secrets, &output, &reads, max_line);
    assert_eq!(
        pieces,
        fuzzing::log_output(&secrets, &output, &[], max_line),
        "how the pipe delivers the output changed what was logged"
    );
    let raw: Vec<u8> = pieces.iter().flat_map(|p| p.raw.iter().copied()).collect();
    assert_eq!(raw, output, "the pieces are not the output");
    for (i, p) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        assert!(p.raw.len() as u64 <= max_line, "a piece over the limit");
        // A cut piece is `max_line` bytes, less a character it would split (up to 3 bytes),
        // which starts the next piece whole.
        let short = max_line - p.raw.len() as u64;
        let next = pieces.get(i + 1).map_or(&[][..], |n| n.raw.as_slice());
        let moved = short <= 3
            && next.len() as u64 >= short
            && starts_partial_char(&next[..short as usize]);
        assert!(
            p.raw.ends_with(b"\n") || short == 0 || moved || last,
            "a piece cut short: {:?}",
            p.raw
        );
    }
    // So valid output comes in valid pieces: no replacement character hides a secret's part.
    if std::str::from_utf8(&output).is_ok() && max_line >= 4 {
        for p in &pieces {
            assert!(
                std::str::from_utf8(&p.raw).is_ok(),
                "a character split: {:?}",
                p.raw
            );
        }
    }
    let logged: String = pieces.iter().map(|p| p.text.as_str()).collect();
    for needle in needles(&secrets) {
        assert!(
            !logged.contains(&needle),
            "secret {needle:?} shown in {logged:?} (pieces {pieces:?})"
        );
    }

    let all: Vec<String> = secrets.iter().chain(&later).cloned().collect();
    let text = String::from_utf8_lossy(&output);
    assert_eq!(
        fuzzing::mask_line(&secrets, &later, &text),
        fuzzing::mask_line(&all, &[], &text),
        "a secret learnt during the run masks differently"
    );
});
