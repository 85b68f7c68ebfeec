//! Property tests over what a user or a script hands a DTU as text: config
//! files (arbitrary, and valid ones with fields replaced by hostile values)
//! and control-socket lines. Each ends in an error or a value within its
//! bounds, never a panic; the checks are the `config_control` fuzz
//! target's own (dtu::fuzzing), whose corpus `fuzz_corpus.rs` replays.

use dtu::config::{PrimaryConfig, PrimaryFile};
use dtu::control::Request;
use dtu::fuzzing::{
    config_control, config_control_mode as mode, mutate, PRIMARY_TEMPLATE, REMOTE_TEMPLATE,
};
use proptest::prelude::*;

/// Values a careless or hostile user might write, as raw TOML.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-1",
            "nan",
            "inf",
            "-inf",
            "1e308",
            "18446744073709551615",
            "18446744073709551616",
            "4294967296",
            "true",
            "[]",
            "{}",
            "\"\"",
            "\"0\"",
            "\"1e19s\"",
            "\"1e20s\"",
            "\"-5ms\"",
            "\"nan\"",
            "\"inf\"",
            "\"1e30\"",
            "\"16EiB\"",
            "\"1025TiB\"",
            "\"1Tbit\"",
            "\"2Tbit\"",
            "\"0.5\"",
            "\"60s\"",
            "\"61s\"",
            "\"10s\"",
            "\"11s\"",
            "\"4KiB\"",
            "\"1MiB\"",
            "\"unlimited\"",
            "\"localhost\"",
            "\"[::1]:0\"",
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "\"[0-9.e+-]{0,12}(ns|us|ms|s|min|h|KiB|MiB|GiB|TiB|k|M|G|T|bit)?\"",
        "\\PC{0,20}",
    ]
}

/// A template's editable lines with some values replaced or removed, in
/// the fuzz target's edit format.
fn edits() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            any::<u8>(),
            prop_oneof![9 => hostile_value(), 1 => Just(String::new())],
        ),
        1..6,
    )
    .prop_map(|es| {
        es.into_iter()
            .flat_map(|(line, value)| {
                let mut e = vec![line];
                e.extend_from_slice(value.as_bytes());
                e.push(b'\n');
                e
            })
            .collect()
    })
}

/// Control lines: hostile set-policy and dirty requests, and noise.
fn control_line() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            prop::option::of(prop::sample::select(vec![
                "received",
                "buffered",
                "sent",
                "remote-received",
                "remote-stored",
                "later",
                "",
            ])),
            prop::option::of("[0-9.e+-]{0,8}(ns|us|ms|s|min|h)?"),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<f64>()),
        )
            .prop_map(|(trigger, delay, spoofing, dirty_threshold)| {
                serde_json::json!({
                    "op": "set-policy",
                    "trigger": trigger,
                    "delay": delay,
                    "spoofing": spoofing,
                    "dirty_threshold": dirty_threshold,
                })
                .to_string()
            }),
        any::<f64>().prop_map(|pct| format!("{{\"op\":\"dirty\",\"pct\":{pct:?}}}")),
        "\\PC{0,40}"
            .prop_map(|label| serde_json::json!({"op": "checkpoint", "label": label}).to_string()),
        "\\PC{0,60}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        config_control(&data);
    }

    #[test]
    fn arbitrary_config_text_never_panics(text in "\\PC{0,400}", remote in any::<bool>()) {
        let m = if remote { mode::REMOTE_TEXT } else { mode::PRIMARY_TEXT };
        config_control(&[&[m][..], text.as_bytes()].concat());
    }

    #[test]
    fn mutated_valid_configs_never_panic(e in edits(), remote in any::<bool>()) {
        let m = if remote { mode::REMOTE_EDITS } else { mode::PRIMARY_EDITS };
        let run = config_control(&[&[m][..], &e].concat());
        prop_assert_eq!(run.configs_ok + run.configs_refused, 1);
    }

    #[test]
    fn control_lines_never_panic(lines in prop::collection::vec(control_line(), 1..8)) {
        let text = lines.join("\n");
        let run = config_control(&[&[mode::CONTROL_LINES][..], text.as_bytes()].concat());
        prop_assert_eq!(run.requests_ok + run.requests_refused, text.lines().count());
    }

    #[test]
    fn mutated_control_requests_never_panic(e in prop::collection::vec(any::<u8>(), 0..200)) {
        config_control(&[&[mode::CONTROL_EDITS][..], &e].concat());
    }
}

#[test]
fn the_templates_are_valid_and_their_edits_take_effect() {
    for (m, t) in [
        (mode::PRIMARY_TEXT, PRIMARY_TEMPLATE),
        (mode::REMOTE_TEXT, REMOTE_TEMPLATE),
    ] {
        let run = config_control(&[&[m][..], t.as_bytes()].concat());
        assert_eq!(run.configs_ok, 1, "{t}");
    }
    // An edit that only a bound catches: the template with delay = 1e19s.
    let line = PRIMARY_TEMPLATE
        .lines()
        .filter(|l| l.contains(" = "))
        .position(|l| l.starts_with("delay = "))
        .unwrap() as u8;
    let text = mutate(PRIMARY_TEMPLATE, &[&[line][..], b"\"1e19s\""].concat());
    let file: PrimaryFile = toml::from_str(&text).unwrap();
    let e = PrimaryConfig::from_file("p.toml".as_ref(), &file)
        .unwrap_err()
        .to_string();
    assert!(e.contains("policy.delay") && e.contains("1e19s"), "{e}");
    // The control socket refuses the same delay, naming the field.
    let e = Request::parse(r#"{"op":"set-policy","delay":"1e19s"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("delay:") && e.contains("60s"), "{e}");
}
