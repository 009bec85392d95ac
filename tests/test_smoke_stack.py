from tests.servers import Stack


def test_stack_serves_health(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["postgres"] == {"ok": True}
