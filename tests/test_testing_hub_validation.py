"""Card metadata checks of /api/validate-yaml."""

from __future__ import annotations


def test_validate_yaml(hub_server):  # noqa: F811
    from huggingface_hub.utils import get_session

    def check(meta: str) -> tuple[int, list[str]]:
        r = get_session().post(f"{hub_server.url}/api/validate-yaml",
                               json={"content": f"---\n{meta}\n---\n# card\n", "repoType": "model"})
        return r.status_code, [e["message"] for e in r.json()["errors"]]

    ok = "license: apache-2.0\nbase_model: org/base\nlibrary_name: transformers\npipeline_tag: text-generation"
    assert check(ok) == (200, [])
    assert check("license: not-a-license")[0] == 400
    status, errors = check("license: mit\nbase_model: ./runs/tiny/base")
    assert status == 400 and "base_model" in errors[0]
    assert check("base_model: /abs/path")[0] == 400
    assert check("- just\n- a list")[0] == 400
    assert check("license: [mit\n")[0] == 400
    status, errors = check("model-index:\n- name: x\n  results:\n  - task: {type: text-generation}\n    metrics: []")
    assert status == 400 and any("dataset" in e for e in errors)
