// Dataset index -> slot of the reservoir: the policy's `pos` state tensor.
//
// Not sharded: pos is an array [N]. Sharded (no N-sized state may be
// replicated): pos is an open-addressing hash of the member slots [H], H =
// 2P (load <= 1/2), -1 empty, linear probing; an entry's key is its slot's
// dataset index, so nothing else is stored. Erasure shifts the probe run
// back (no tombstones), so lookups stay O(1) expected however long it runs.
#pragma once

#include <cstdint>

#include "policy_layout.h"
#include "rng.h"
#include "util.h"

namespace hardmix {
namespace policy {

struct SlotIndex {
  int32_t* pos;
  const double* slots;  // [R][kSlotFields]: the hash's keys are the slots' dataset indices
  int64_t P;            // 2^ceil(log2 R)
  bool sharded;

  HM_FN double index_at(int32_t j) const { return slots[static_cast<int64_t>(j) * kSlotFields + kIndex]; }
  HM_FN int64_t hmask() const { return 2 * P - 1; }
  HM_FN int64_t home(int64_t i) const { return static_cast<int64_t>(rng::mix13(static_cast<uint64_t>(i))) & hmask(); }

  HM_FN int32_t get(int64_t i) const {
    if (!sharded) return pos[i];
    for (int64_t h = home(i);; h = (h + 1) & hmask()) {
      const int32_t j = pos[h];
      if (j < 0 || index_at(j) == static_cast<double>(i)) return j;
    }
  }

  // i is not a member; slot j already holds index i.
  HM_FN void put(int64_t i, int32_t j) {
    if (!sharded) {
      pos[i] = j;
      return;
    }
    int64_t h = home(i);
    while (pos[h] >= 0) h = (h + 1) & hmask();
    pos[h] = j;
  }

  // i is a member; its slot still holds index i.
  HM_FN void erase(int64_t i) {
    if (!sharded) {
      pos[i] = -1;
      return;
    }
    int64_t hole = home(i);
    while (index_at(pos[hole]) != static_cast<double>(i)) hole = (hole + 1) & hmask();
    for (int64_t k = (hole + 1) & hmask(); pos[k] >= 0; k = (k + 1) & hmask()) {
      // Entry k may fill the hole when the hole lies on its probe path
      // (cyclically between its home and k).
      const int64_t want = home(static_cast<int64_t>(index_at(pos[k])));
      if (((k - want) & hmask()) >= ((k - hole) & hmask())) {
        pos[hole] = pos[k];
        hole = k;
      }
    }
    pos[hole] = -1;
  }
};

}  // namespace policy
}  // namespace hardmix
