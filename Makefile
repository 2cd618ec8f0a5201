# Everyday commands. CI runs .ci/run, which runs the same checks.
GO ?= go
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: build test lint bench fuzz run
build:
	$(GO) build -o bin/kms ./cmd/kms

test:
	$(GO) test -race ./...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	$(STATICCHECK) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 3s ./kms/ ./kms/ca/ ./mail/...

# Each fuzz target for a while; new interesting inputs land in testdata/fuzz.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseDuration -fuzztime 60s ./policy/
	$(GO) test -run '^$$' -fuzz FuzzNormalize -fuzztime 60s ./enroll/
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime 60s ./config/
	$(GO) test -run '^$$' -fuzz FuzzServerReplies -fuzztime 60s ./mail/smtpclient/

run:
	$(GO) run ./cmd/kms serve
