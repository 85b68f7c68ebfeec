#!/bin/sh
for i in 1 2 3; do
  mkdir -p /tmp/dbg-$i
  RUST_LOG=dtu::transport=debug,dtu::primary=info /work/main/target/release/dtu-bench link-efficiency --preset wan-100m-40ms --out /tmp/dbg-$i > /tmp/dbg-$i/stdout.txt 2>&1
  echo "$i $(grep -h '^  wan' /tmp/dbg-$i/stdout.txt | cut -c1-200)" >> /tmp/dbg.txt
done
echo done >> /tmp/dbg.txt
