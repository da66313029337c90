"""Operations: alerts raised by automation and read by the dashboards."""
