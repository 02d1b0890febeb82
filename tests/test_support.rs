//! The test-skip rule itself: a skip is logged with its reason for `make test`'s summary, and under
//! FLANNEL_TEST_STRICT=1 (CI) a skip is a failure.

mod support;

#[test]
fn a_skip_is_logged_and_is_a_failure_in_strict_mode() {
    let log = tempfile::NamedTempFile::new().expect("a temp file");
    // SAFETY: this test binary has this one test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("FLANNEL_TEST_SKIP_LOG", log.path());
        std::env::remove_var("FLANNEL_TEST_STRICT");
    }
    support::skip("some_test", "the `frobnicate` command is missing");
    let logged = std::fs::read_to_string(log.path()).expect("the skip log");
    assert_eq!(logged, "SKIPPED some_test: the `frobnicate` command is missing\n");

    // SAFETY: as above.
    unsafe { std::env::set_var("FLANNEL_TEST_STRICT", "1") };
    let strict = std::panic::catch_unwind(|| support::skip("other_test", "no root"));
    let message = strict.expect_err("a skip must fail under FLANNEL_TEST_STRICT=1");
    let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains("other_test") && text.contains("no root"), "{text}");
}
