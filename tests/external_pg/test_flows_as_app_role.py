"""Operations with approval and audit, webhooks (receipt, deduplication, processing) and the switch-model backfill
as the managed database's application role: the existing tests, collected again here, where conftest.py points
their fixtures at the managed server."""

from tests.deployments.test_api_tools import (  # noqa: F401
    ops, s3, test_approve_and_reject_need_admin_and_an_operation_awaiting_approval,
    test_execute_dry_run_then_for_real_then_replay)
from tests.deployments.test_gateway import (  # noqa: F401
    gateway, test_prefect_down_keeps_deliveries_and_emits_each_once_after,
    test_real_issue_delivery_is_accepted_persisted_and_emitted_once)
from tests.flows.test_backfill import (  # noqa: F401
    corpus, fake32, test_crashed_switch_keeps_old_model_and_resumes_without_redoing_work,
    test_switch_backfills_everything_then_search_uses_new_model)
from tests.flows.test_github_events import (  # noqa: F401
    test_a_delivery_processed_twice_does_nothing_the_second_time, test_issue_lifecycle_inline)
from tests.flows.test_operate_approval import (  # noqa: F401
    guarded, test_approved_from_outside_executes_once_and_records_the_approver,
    test_unanswered_approval_expires_into_rejection)
from tests.tasks.test_audit import tamper, test_chain_verifies_and_refuses_update_delete_truncate  # noqa: F401
