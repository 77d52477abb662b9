//! Property test: every parser of text a client or an operator types returns a value or an
//! error, and never panics, whatever the text. A restore instant like "éé" once panicked the
//! time parser (a byte index inside a multibyte character), taking the request's task with it.
//! Inputs are random strings over an alphabet rich in multibyte characters, and valid examples
//! with characters inserted, replaced or cut at random places. Seeded, so a failure names its
//! case and reproduces.

use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

/// ASCII that the parsers look for, then characters of 2, 3 and 4 bytes and some that other
/// checks single out (NUL, newline, a bidi override).
const ALPHABET: &[char] = &[
    '0', '1', '2', '9', '+', '-', ':', '.', '/', 'T', 'Z', ' ', '_', '"', '\'', '=', '[', ']', '@',
    'a', 'f', 'x', 'é', 'ß', 'Ж', '€', '中', '\u{FFFD}', '𝄞', '😀', '\0', '\n', '\u{202E}',
];

/// Valid (or nearly valid) inputs, so mutations reach past the first check of each parser.
const SEEDS: &[&str] = &[
    "2026-11-29T14:32:00Z",
    "2026-11-29 14:32:00+00",
    "2026-11-29 14:32:00.5-01:30",
    "203.0.113.5",
    "192.168.1.0/24",
    "2001:db8::/32",
    "owner@example.com",
    "db_0123456789abcdef",
    "pgaas_abcdef12_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
    "0123abcd",
    "a3bb189e-8bf9-3888-9912-ace4e6543002",
    "active",
    "0640",
    "api=secret\npatroni=secret\n",
    "restored",
];

fn random_text(rng: &mut StdRng) -> String {
    let len = rng.random_range(0..24);
    (0..len).map(|_| *ALPHABET.choose(rng).unwrap()).collect()
}

fn mutated(rng: &mut StdRng) -> String {
    let mut chars: Vec<char> = SEEDS.choose(rng).unwrap().chars().collect();
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..=chars.len());
        let c = *ALPHABET.choose(rng).unwrap();
        match rng.random_range(0..3) {
            0 => chars.insert(at, c),
            1 if at < chars.len() => chars[at] = c,
            _ => chars.truncate(at),
        }
    }
    chars.into_iter().collect()
}

/// Every parser of typed text reachable from here; each result is dropped: only a panic fails.
fn parse_all(text: &str) {
    use crate::model::*;
    let _ = crate::archive::parse_time(text);
    let _ = crate::archive::restore::into_name("db_0123456789abcdef", text);
    let _ = crate::archive::restore::into_name(text, "restored");
    let _ = FriendlyName::parse(text);
    let _ = OwnerEmail::parse(text);
    let _ = AllowEntry::parse(text);
    let _ = DbName::parse(text);
    let _ = RoleName::parse(text);
    let _ = text.parse::<TenantId>();
    let _ = text.parse::<TenantStatus>();
    let _ = text.parse::<QuotaState>();
    let _ = text.parse::<Scope>();
    let _ = ApiKey::parse_presented(text);
    let _ = crate::control_db::api_keys::KeySelector::parse(text);
    let _ = cluster::ClusterSecrets::parse(text);
    let _ = crate::install::playbook::parse_mode(text);
}

#[test]
fn no_parser_of_typed_text_panics() {
    for known in ["éé", "é", "€€€", "2026-11-29 14:32:00+é", "+é", "😀+00"] {
        parse_all(known);
    }
    let seed = 0x7061_7273_6531;
    let mut rng = StdRng::seed_from_u64(seed);
    for case in 0..20_000 {
        let text = if case % 2 == 0 {
            random_text(&mut rng)
        } else {
            mutated(&mut rng)
        };
        let outcome = std::panic::catch_unwind(|| parse_all(&text));
        assert!(
            outcome.is_ok(),
            "seed {seed:#x}, case {case}: a parser panicked on {text:?}"
        );
    }
}

#[test]
fn a_time_with_multibyte_characters_is_an_error_that_says_how_to_write_one() {
    let e = crate::archive::parse_time("éé").unwrap_err().to_string();
    assert!(
        e.contains("\"éé\"") && e.contains("2026-11-29T14:32:00Z"),
        "{e}"
    );
}
