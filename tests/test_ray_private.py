"""The private Ray APIs raymmi uses: these fail on a Ray upgrade, loudly, not in a stage.

* the tune placement-group reaper;
* ``raymmi.run.without_budget_backpressure`` (``ingest images``): Ray Data's list of
  backpressure policies and the ``DataContext`` config key that overrides it.

``raymmi.run._tune._callbacks.reap_orphaned_placement_groups`` reads the GCS placement-group
table through ``ray._private.state`` (no public API names a placement group's creator). These
tests pin what it relies on, so a Ray upgrade fails here, loudly, and not inside a search.
"""

from __future__ import annotations

import ray

from raymmi.run import PRIVATE_STATE_CHECKED, check_private_state_api


def test_installed_ray_is_one_the_reaper_was_checked_on():
    version = ".".join(ray.__version__.split(".")[:2])
    assert version in PRIVATE_STATE_CHECKED, (
        f"ray {ray.__version__} is installed; re-check reap_orphaned_placement_groups against "
        "its ray._private.state and gcs_pb2.PlacementGroupTableData, then add the version"
    )
    check_private_state_api()


def test_private_state_api_has_what_the_reaper_reads():
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    assert callable(state._connect_and_get_accessor)
    table = gcs_pb2.PlacementGroupTableData
    fields = set(table.DESCRIPTOR.fields_by_name)
    assert {
        "placement_group_id",
        "state",
        "is_detached",
        "creator_actor_id",
        "creator_actor_dead",
        "creator_job_id",
    } <= fields
    assert table.REMOVED != table.CREATED
    assert callable(remove_placement_group) and callable(PlacementGroup)


def test_backpressure_policy_config_is_what_ingest_images_overrides():
    from ray.data._internal.execution import backpressure_policy as bp

    names = [p.__name__ for p in bp.ENABLED_BACKPRESSURE_POLICIES]
    assert "ResourceBudgetBackpressurePolicy" in names
    assert {"ConcurrencyCapBackpressurePolicy", "DownstreamCapacityBackpressurePolicy"} <= set(
        names
    )
    assert bp.ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY == "backpressure_policies.enabled"
    # the executor reads the key from the dataset's context
    import inspect

    assert "ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY" in inspect.getsource(
        bp.get_backpressure_policies
    )
