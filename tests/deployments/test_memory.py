"""The in-process Memory facade: what the README shows an agent doing."""

from __future__ import annotations

from deployments.memory import Memory


def test_agent_stores_and_recalls_a_conversation(settings, tenant):
    memory = Memory(tenant=tenant, settings=settings)
    ana = memory.create_context(user_id="ana", agent_id="copilot")
    memory.append(ana.id, [{"role": "user", "content": "The payments deploy failed with OOMKilled on node 7"},
                           {"role": "assistant", "content": "Raise the memory limit of the payments pod to 1Gi"}])
    bob = memory.create_context(user_id="bob", agent_id="copilot")
    memory.append(bob.id, [{"role": "user", "content": "Rotate the TLS certificate of the ingress"}])
    other = memory.create_context(user_id="ana", agent_id="copilot")
    memory.append(other.id, [{"role": "user", "content": "payments pod OOMKilled again, memory limit too low"}])

    hits = memory.search("payments OOMKilled memory limit", user_id="ana")
    assert hits and {h.metadata["context_id"] for h in hits} <= {str(ana.id), str(other.id)}
    within = memory.search("memory limit", context_id=bob.id)
    assert all(h.metadata["context_id"] == str(bob.id) for h in within)
    similar = memory.similar(ana.id)
    assert similar[0].context_id == other.id
    assert memory.get(ana.id).messages[1].content.startswith("Raise the memory limit")
    assert memory.summary(ana.id).message_count == 2

    memory.remember("runbook/oom", "When a pod is OOMKilled raise its memory limit", team="sre")
    assert memory.search("OOMKilled memory limit", mode="keyword", metadata={"team": "sre"})[0].document_id == "runbook/oom"
    assert memory.delete(bob.id)
