// Command otelcol-celery is a minimal OpenTelemetry Collector for Celery workers: exactly the
// components collector-config.yaml and the configs under docs/deploy/ use, all at one
// Collector release (core v0.161.0 / v1.67.0, contrib v0.161.0).
//
// Why a distribution of our own rather than otelcol-contrib: the contrib binary carries
// hundreds of components (a ~300 MB image); a sidecar next to every worker pod should carry
// only what it runs. Build it with `go build -o otelcol-celery .` in this directory (the
// project's scripts/test does so into .tools/bin/), see docs/collector.md.
package main

import (
	"log"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/otelcol"
)

// version is the Collector release every module in go.mod is pinned to.
const version = "0.161.0"

func main() {
	settings := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "otelcol-celery",
			Description: "OpenTelemetry Collector for Celery workers (otel-celery-metrics)",
			Version:     version,
		},
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				// file: for --config; env: for ${env:TRACES_BACKEND_ENDPOINT} and friends;
				// yaml: for --set key=value, how an operator overrides one setting (a port)
				// without editing the shipped file.
				ProviderFactories: []confmap.ProviderFactory{
					fileprovider.NewFactory(),
					envprovider.NewFactory(),
					yamlprovider.NewFactory(),
				},
				DefaultScheme: "env",
			},
		},
	}
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		log.Fatal(err)
	}
}
