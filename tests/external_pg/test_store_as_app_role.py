"""Ingest, search in every mode, and contexts as the managed database's application role: the existing tests,
collected again here, where conftest.py points their fixtures at the managed server."""

from tests.flows.test_ingest import (  # noqa: F401
    test_bad_items_fail_alone_and_are_named, test_bulk_load_drops_and_rebuilds_both_indexes,
    test_editing_one_paragraph_reembeds_only_its_chunks, test_removed_chunks_are_deleted,
    test_reingest_unchanged_makes_zero_embedding_calls)
from tests.tasks.test_contexts import (  # noqa: F401
    test_append_indexes_only_new_messages_with_overlap, test_concurrent_appenders_lose_nothing_and_keep_their_order,
    test_create_get_update_delete_round_trip, test_encrypted_context_stores_ciphertext_and_still_searches,
    test_failure_inside_the_transaction_leaves_nothing, test_search_scopes_context_user_and_metadata)
from tests.tasks.test_search import (  # noqa: F401
    corpus, test_each_mode_finds_the_matching_document_first, test_filtered_vector_search_still_returns_limit_rows,
    test_hybrid_hit_carries_both_scores, test_maxscore_pruning_returns_the_exact_bm25_top_n,
    test_tenants_do_not_see_each_other)
