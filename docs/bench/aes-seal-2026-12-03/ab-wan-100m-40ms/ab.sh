#!/bin/sh
for i in 1 2 3; do
  for v in old new; do
    if [ $v = old ]; then B=/tmp/target-old/release/dtu-bench; else B=/work/main/target/release/dtu-bench; fi
    mkdir -p /tmp/ab-$v-$i
    $B link-efficiency --preset wan-100m-40ms --out /tmp/ab-$v-$i > /tmp/ab-$v-$i/stdout.txt 2>&1
    echo "$v $i $(grep -h '^  wan' /tmp/ab-$v-$i/stdout.txt | cut -c1-200)" >> /tmp/ab.txt
    vmstat 1 2 | tail -1 >> /tmp/ab.txt
  done
done
echo done >> /tmp/ab.txt
