//! Arbitrary bytes as a reply or outcome record's value, through the gateway's and the processor's reply decoder.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::reply_decode(data);
});
