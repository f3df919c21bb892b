import CairnCLI

// The `cairn` binary: the CLI and daemon with the built-in example workflows.
await CairnCLI.main(workflows: CairnCLI.exampleWorkflows)
