// `m40llm bench`: end-to-end throughput of a backend on one GGUF model
// (decode at several batch sizes, prefill of long prompts, weight bandwidth
// against the device's copy bandwidth), printed as a table and written as
// JSON. A measurement, never a pass/fail test.
#pragma once

#include <string>
#include <vector>

#include "CLI/CLI.hpp"

namespace m40llm {

struct BenchOptions {
  std::string model;                  // GGUF path; empty: use --preset
  std::string preset;                 // mkmodel preset written to preset_dir when absent
  std::string preset_dir = ".";       // where preset models are written
  std::string backend = "cuda";
  int device = 0;
  int threads = 0;
  std::vector<int> batches = {1, 4, 16, 32};
  int context = 128;                  // positions already in each slot when decode is timed
  int steps = 32;                     // timed decode steps per batch size
  int prefill = 512;                  // prompt length for the prefill measurement
  int reps = 3;                       // prefill repetitions (median reported)
  int max_tokens_per_pass = 512;
  bool kernels = true;                // also the kernel yardstick (cuda builds)
  std::string json = "m40llm_bench.json";
};

// Adds the `bench` subcommand's options to `app`.
void AddBenchOptions(CLI::App* app, BenchOptions* o);

// Runs the benchmark; returns the process exit code.
int RunBench(const BenchOptions& o);

}  // namespace m40llm
