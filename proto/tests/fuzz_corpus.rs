//! Replays the frame-decoder fuzz corpus (proto/fuzz/corpus/frame_decoder)
//! with the fuzz target's own checks, so every input the fuzzer kept, and
//! every crash it found and we fixed, runs in CI without cargo-fuzz.

#[test]
fn corpus_replays_cleanly() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/frame_decoder");
    let mut files = 0;
    let mut frames = 0;
    for entry in std::fs::read_dir(dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        frames += dtu_proto::fuzzing::frame_decoder(&std::fs::read(&path).unwrap());
        files += 1;
    }
    assert!(files >= 15, "corpus has only {files} files");
    assert!(frames >= 28, "seed frames no longer decode: {frames}");
}
