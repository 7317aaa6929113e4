"""The live display shows what the user named the batch, as written."""

from __future__ import annotations

import anyio
import pytest

from batchmetrics import BatchMetrics


@pytest.mark.asyncio
@pytest.mark.parametrize("batch_id", ["ingest[/data/2024]", "[bold]run[/] [link=x]", "a\\"])
async def test_markup_like_batch_id_is_displayed_as_written_and_the_batch_completes(
    batch_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("rich")
    # rich used to parse the batch id as markup: MarkupError killed the ticker and the batch
    async with BatchMetrics(batch_id, display=True, interval=0.02) as m:
        for i in range(10):
            await anyio.sleep(0.01)  # the work; the ticker redraws meanwhile
            await m.record_file(f"f{i}.wfm", duration=0.01)
    assert m.summary().total_files == 10
    assert batch_id in capsys.readouterr().out
