// m40llm command-line entry point (subcommands are being built).
int main() { return 0; }
