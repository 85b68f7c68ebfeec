#!/bin/sh
cd /work/main
for i in 1 2 3; do
  timeout 1500 ./target/release/dtu-bench link-efficiency --preset wan-100m-40ms --preset wan-1g-10ms --preset lossy-wan --preset bonded-reorder --preset corrupt-wan --preset thin-return --preset bridged-10m --out /tmp/le-t$i > /tmp/le-t$i.log 2>&1
done
timeout 900 ./target/release/dtu-bench throughput-unlimited --out /tmp/tu-full > /tmp/tu-full.log 2>&1
timeout 900 ./target/release/dtu-bench ack-latency --out /tmp/al-full > /tmp/al-full.log 2>&1
echo done > /tmp/trials.done
