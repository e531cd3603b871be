module github.com/cilium/tetragon

go 1.26.0
