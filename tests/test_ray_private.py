"""The one private Ray API raymmi uses (the tune placement-group reaper): fails on an upgrade.

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
