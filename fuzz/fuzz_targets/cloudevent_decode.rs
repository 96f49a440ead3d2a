//! Arbitrary bytes, split into a record's key, headers and value, through `EventCodec::decode`.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::cloudevent_decode(data);
});
