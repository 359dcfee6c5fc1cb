module llmkit.test/gorender

go 1.22
