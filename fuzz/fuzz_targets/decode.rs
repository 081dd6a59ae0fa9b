//! The wire decoder on arbitrary bytes: never panics, never allocates past its bound, and whatever it
//! accepts encodes back to bytes that decode to the same batch.
#![no_main]

use harmonylite::log::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Also reach the MessagePack body directly: libFuzzer rarely guesses the envelope.
    let wrapped;
    let input = match data.split_first() {
        Some((0xff, rest)) => {
            wrapped = [b"HL\x01\x00".as_slice(), rest].concat();
            wrapped.as_slice()
        }
        _ => data,
    };
    if let Ok(batch) = decode(input) {
        for compress in [false, true] {
            let again = encode(&batch, compress);
            let back =
                decode(&again).expect("what decode accepted re-encodes to something it accepts");
            // Compare through the canonical encoding: a REAL NaN is not PartialEq-equal to itself.
            assert_eq!(
                encode(&back, false),
                encode(&batch, false),
                "round trip changed the batch"
            );
        }
    }
});
