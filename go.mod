module github.com/pushctl/pushctl

go 1.26.8
