mod common;

#[test]
fn starts_and_answers_health() {
    let mut a = common::agent().start();
    a.assert_alive();
    let t = a.run_wait(serde_json::json!({"command": "echo", "args": ["hi"]}));
    assert_eq!(t["status"], "completed");
    assert_eq!(t["stdout"], "hi\n");
}
