"""Uplink bytes per tick: our codec (msgpack + float32 + zlib) against the same ticks as plain
JSON, for several batch sizes, on real FD001 test readings with edge-like scores."""

from __future__ import annotations

import numpy as np

from bench.common import DATA, save, table
from contract.cmapss import COLUMNS, SENSORS, read_cmapss
from contract.codec import encode_uplink, uplink_as_json
from contract.payloads import UplinkBatch

# The 14 sensors that vary on FD001; the bench does not need a bundle.
FEATURES = [s for s in SENSORS if s not in
            ("sensor_1", "sensor_5", "sensor_6", "sensor_10", "sensor_16", "sensor_18",
             "sensor_19")]


def main() -> dict:
    data = read_cmapss(DATA / "test_FD001.txt")
    unit = data[data[:, 0] == 24][:, [COLUMNS.index(f) for f in FEATURES]]  # 186 cycles
    rng = np.random.default_rng(0)
    rows, record = [], {}
    for n in (1, 10, 50, 186):
        prob = rng.random(n).astype(np.float32)
        prob[: min(n, 29)] = np.nan  # window not yet full
        batch = UplinkBatch(gateway="gw-plant-7", asset="engine-24", first_seq=1000,
                            timestamps=1.79e9 + np.arange(n) * 0.1, features=tuple(FEATURES),
                            values=unit[:n], probability=prob, rul=prob * 125,
                            model_version="fd001-20261123")
        ours, js = len(encode_uplink(batch)), len(uplink_as_json(batch))
        rows.append([n, ours / n, js / n, f"{100 * ours / js:.1f} %"])
        record[str(n)] = {"codec_bytes_per_tick": ours / n, "json_bytes_per_tick": js / n,
                          "ratio": ours / js}
    table("Uplink bytes per tick (14 features + edge scores)",
          ["ticks per batch", "codec B/tick", "JSON B/tick", "codec / JSON"], rows)
    save("wire_size", {"results": record})
    return record


if __name__ == "__main__":
    main()
